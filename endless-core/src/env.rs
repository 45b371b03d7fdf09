//! Environment codec (being written).
