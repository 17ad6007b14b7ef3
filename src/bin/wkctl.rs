//! `wkctl`: the kubectl-like CLI for wasmkube.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = wasmkube::cli::Cli::parse();
    std::process::exit(wasmkube::cli::run(cli).await);
}
