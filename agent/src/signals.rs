//! Fatal signals the program leaves at their default action (SIGTERM from a service
//! manager, SIGPIPE at the end of a shell pipeline) would end the process with its last
//! records still in the rings. For those signals only, the agent installs a handler that
//! sends the rings, restores the default action and re-raises the signal: the process
//! still dies of it, with the same status. Signals the program handles or ignores are
//! left alone, and a program that installs its own handler later replaces this one.

use std::sync::atomic::Ordering;

/// Signals whose default action ends the process without a core dump or with one.
const FATAL: [libc::c_int; 8] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGPIPE,
    libc::SIGALRM,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Installs the flushing handler for each fatal signal still at its default action.
pub fn install() {
    for sig in FATAL {
        // SAFETY: sigaction with a null new action only reads the current one into `old`;
        // the new action is fully initialised before it is installed.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
                || old.sa_sigaction != libc::SIG_DFL
            {
                continue;
            }
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_fatal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut act.sa_mask);
            act.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}

/// Keeps these signals off the agent's writer thread, which may hold the locks a flush
/// needs.
pub fn block_in_this_thread() {
    // SAFETY: builds a signal set on the stack and changes this thread's mask only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in FATAL {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

extern "C" fn on_fatal(sig: libc::c_int) {
    let errno = std::io::Error::last_os_error().raw_os_error();
    // A thread interrupted inside the agent may hold the locks a flush takes: then the
    // flush is skipped (the calls in the rings are lost, as without this handler).
    if !crate::in_agent() && crate::ENABLED.load(Ordering::Acquire) {
        crate::flush_on_signal(sig);
    }
    // SAFETY: resets the action to the default and re-raises: the signal is blocked while
    // this handler runs, so it is delivered, fatally, once the handler returns.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
        if let Some(e) = errno {
            *libc::__errno_location() = e;
        }
    }
}
