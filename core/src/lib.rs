//! The `no_std`, allocation-free core of `fleet-provisioning`.
//!
//! It holds the codecs for every byte that crosses a socket (AWS event-stream
//! frames, Greengrass core-bus objects, AWS IoT fleet provisioning JSON) and
//! the provisioning state machine, which performs no I/O: the host feeds it
//! events and the current time and carries out the actions it returns.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod checkpoint;
pub mod corebus;
pub mod eventstream;
pub mod fleet;
pub mod machine;
pub mod object;
pub mod retry;
pub mod transport;
