//! fd renumbering plan (being written).
