//! redis registry for masse.
