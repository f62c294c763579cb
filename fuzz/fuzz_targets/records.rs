//! Record decoding and the analyses behind replay, reached directly: the input (after a
//! first byte choosing packed symbols, packed sources or a calls chunk; anything else is
//! a records chunk, first byte included) becomes the payload of a
//! well-formed, checksummed, uncompressed chunk (docs/FORMAT.md), so mutations are not all
//! stopped by the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rltrace::analyze::leaks::analyze;
use rltrace::format::{
    Reader, CHUNK_CALLS, CHUNK_FLAG_OPTIONAL, CHUNK_HEADER_LEN, CHUNK_META, CHUNK_RECORDS,
    CHUNK_SOURCES, CHUNK_SYMBOLS, MAGIC, VERSION,
};

fn chunk(out: &mut Vec<u8>, kind: u8, flags: u8, payload: &[u8]) {
    let mut h = [0u8; CHUNK_HEADER_LEN];
    h[0] = kind;
    h[1] = flags;
    h[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[12..16].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
}

fuzz_target!(|data: &[u8]| {
    let mut file = Vec::with_capacity(data.len() + 64);
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&VERSION.to_le_bytes());
    file.extend_from_slice(&[0; 6]);
    chunk(&mut file, CHUNK_META, 0, &[0]);
    match data.split_first() {
        Some((0, rest)) => chunk(&mut file, CHUNK_SYMBOLS, CHUNK_FLAG_OPTIONAL, rest),
        Some((1, rest)) => chunk(&mut file, CHUNK_SOURCES, CHUNK_FLAG_OPTIONAL, rest),
        Some((2, rest)) => chunk(&mut file, CHUNK_CALLS, 0, rest),
        _ => chunk(&mut file, CHUNK_RECORDS, 0, data),
    }
    let Ok(mut reader) = Reader::new(file.as_slice()) else { return };
    let _ = analyze(&mut reader);
});
