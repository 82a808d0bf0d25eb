//! TCP interface for masse.
