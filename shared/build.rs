//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!` embeds the
//! folders at compile time, and stable Rust cannot tell cargo to watch them otherwise.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
