//! The `duro` program, for the end-to-end tests (same entry point as
//! `host/cli/src/main.rs`).

fn main() {
    duro::cli::main()
}
