//! Test bed.

pub mod bed;
pub mod broker;
pub mod config_standin;
pub mod emulator;
pub mod iotcored_standin;
pub mod pki;
