//! The `inventory-mesh` program as a library: start the whole mesh or one service ([`mesh`]),
//! migrate the relational store, replay real orders through gRPC ([`replay`]) and reconcile live
//! counters with durable records ([`reconcile`]). `main.rs` only parses the command line.
pub mod load;
pub mod mesh;
pub mod rebuild;
pub mod reconcile;
pub mod replay;
