//! `kiln`: serve the samples (`kiln serve`), talk to a running server, and load it (`kiln bench`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let (starters, openapi) = kiln_samples::http::starters();
    kiln_cli::App::new("kiln")
        .about("Durable orchestrations behind an asynchronous HTTP API: serves the Kiln samples")
        .version(env!("CARGO_PKG_VERSION"))
        .register(kiln_samples::register_all)
        .starters(starters, openapi)
        .run()
}
