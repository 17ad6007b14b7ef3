//! Spins on the CPU forever, counting.
fn main() {
    println!("busyloop: spinning");
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}
