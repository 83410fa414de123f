//! `sqlx::migrate!` embeds `migrations/` at compile time, but on stable Rust
//! cargo does not know the macro read those files: without this, a new
//! migration would be missing from incrementally rebuilt binaries.

fn main() {
    for dialect in ["postgres", "mysql", "sqlite"] {
        println!("cargo:rerun-if-changed=../../migrations/{dialect}");
    }
}
