//! `wkctl`: the kubectl-like CLI for wasmkube.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    wasmkube::tls::install_default_provider();
    let cli = wasmkube::cli::Cli::parse();
    std::process::exit(wasmkube::cli::run(cli).await);
}
