//! The `ldapsync` binary: parses the command line and hands over to `ldapsync::cli`.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = ldapsync::cli::Cli::parse();
    ldapsync::telemetry::init_logging(cli.log_format);
    let status = ldapsync::cli::run(cli).await;
    std::process::exit(status.code());
}
