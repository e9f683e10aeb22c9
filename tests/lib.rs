//! Paths of the guest components built by `build.rs`, and helpers shared by
//! the end-to-end tests in `all/`.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// The bytes of a built guest.
pub fn guest_bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}
