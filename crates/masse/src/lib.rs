//! masse facade.
