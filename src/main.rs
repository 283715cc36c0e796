use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Named kubectl-hookrelay (a symlink or copy on PATH): the kubectl plugin.
    if hookrelay::plugin::invoked_as_plugin() {
        std::process::exit(hookrelay::plugin::main().await);
    }
    hookrelay::cli::Cli::parse().run().await
}
