//! Shared helpers for the masse examples.
