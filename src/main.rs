use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    hookrelay::cli::Cli::parse().run().await
}
