//! sql registry for masse.
