//! The message of the gRPC example and tests: a u64, eight bytes big-endian, through tonic's
//! codec API instead of protobuf (no `protoc`, no build script).

use bytes::{Buf, BufMut};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

#[derive(Debug, Clone, Copy, Default)]
pub struct U64Codec;

#[derive(Debug)]
pub struct U64Coder;

impl Encoder for U64Coder {
    type Item = u64;
    type Error = Status;
    fn encode(&mut self, item: u64, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_u64(item);
        Ok(())
    }
}

impl Decoder for U64Coder {
    type Item = u64;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<u64>, Status> {
        if src.remaining() != 8 {
            return Err(Status::invalid_argument("a u64 is 8 bytes"));
        }
        Ok(Some(src.get_u64()))
    }
}

impl Codec for U64Codec {
    type Encode = u64;
    type Decode = u64;
    type Encoder = U64Coder;
    type Decoder = U64Coder;
    fn encoder(&mut self) -> U64Coder {
        U64Coder
    }
    fn decoder(&mut self) -> U64Coder {
        U64Coder
    }
}
