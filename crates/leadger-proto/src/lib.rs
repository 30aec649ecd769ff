//! Generated protobuf types and gRPC stubs for `leads.v1`.
//!
//! Only the gRPC adapter and clients use these types; the domain never sees
//! them. The codec maps undecodable requests to `INVALID_ARGUMENT`.

pub mod codec;

#[allow(clippy::all, clippy::unwrap_used)]
pub mod leads {
    pub mod v1 {
        tonic::include_proto!("leads.v1");
    }
}

/// Encoded `FileDescriptorSet` of `leads.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/leads_descriptor.bin"));
