//! The `inventory-mesh` program as a library: start the whole mesh or one service ([`mesh`]),
//! migrate the relational store, replay real orders through gRPC ([`replay`]) and reconcile live
//! counters with durable records ([`reconcile`]). `main.rs` only parses the command line.
pub mod load;
pub mod mesh;
pub mod rebuild;
pub mod reconcile;
pub mod replay;

/// A failed call of a command-line tool in one line: what was called, the gRPC code and the
/// server's message, and what to check when the service was not there at all.
pub fn rpc_error(what: &str, status: &tonic::Status) -> anyhow::Error {
    let hint = match status.code() {
        tonic::Code::Unavailable => " (is the mesh running there? `make run` serves availability on 50051)",
        tonic::Code::Unimplemented => {
            " (that port serves another service: --target names the availability port, reservation is the next one)"
        }
        _ => "",
    };
    anyhow::anyhow!("{what}: {:?}: {}{hint}", status.code(), status.message())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failed_call_reads_as_one_line_with_a_hint() {
        let refused = tonic::Status::unavailable("tcp connect error");
        assert_eq!(
            super::rpc_error("UpsertLocations", &refused).to_string(),
            "UpsertLocations: Unavailable: tcp connect error (is the mesh running there? `make run` serves availability on 50051)"
        );
        let wrong = tonic::Status::unimplemented("");
        assert!(super::rpc_error("x", &wrong).to_string().ends_with("reservation is the next one)"));
    }
}
