//! The `duro` binary.

fn main() {
    duro::cli::main()
}
