//! Desired objects per node, from the spec. Pure: no I/O.
