//! endless-core (crate docs are written with the lifecycle).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod env;
mod inventory;
pub mod plan;

pub use inventory::{
    Entry, FIRST_INHERITED_FD, FdKind, Inventory, InventoryError, MAX_ENTRIES, MAX_NAME_LEN,
};

/// A file descriptor number, as the operating system numbers them (`RawFd` on Unix).
pub type Fd = i32;
