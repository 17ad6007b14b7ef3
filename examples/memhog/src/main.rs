//! Allocates memory in 1 MiB steps until it is stopped.
fn main() {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        println!("holding {} MiB", hoard.len());
    }
}
