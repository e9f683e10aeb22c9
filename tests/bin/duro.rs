//! The `duro` program, for the end-to-end tests (same entry point as
//! `host/src/main.rs`).

fn main() {
    duro::cli::main()
}
