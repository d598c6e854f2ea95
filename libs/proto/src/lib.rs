//! Generated protobuf and gRPC code for every Inventory Mesh package, plus the encoded file
//! descriptor set that the services hand to server reflection. Nothing else lives here.
#![allow(clippy::all, missing_docs)]

pub mod common {
    pub mod v1 {
        tonic::include_proto!("common.v1");
    }
}
pub mod availability {
    pub mod v1 {
        tonic::include_proto!("availability.v1");
    }
}
pub mod reservation {
    pub mod v1 {
        tonic::include_proto!("reservation.v1");
    }
}
pub mod sourcing {
    pub mod v1 {
        tonic::include_proto!("sourcing.v1");
    }
}
pub mod replenishment {
    pub mod v1 {
        tonic::include_proto!("replenishment.v1");
    }
}

/// Encoded `FileDescriptorSet` of every proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
