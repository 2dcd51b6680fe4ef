#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod cache;
pub mod codec;
mod config;
pub mod conn;
mod error;
pub mod health;
mod keys;
pub mod metrics;
pub mod ratelimit;
pub mod report;
pub mod session;
mod tierkit;

pub use codec::{Codec, CodecBuilder, EncodeInfo};
pub use config::{clock, Config, ConfigBuilder};
pub use error::{DecodeError, Error, Result};
pub use tierkit::Tierkit;
