//! The OMERO side: session probes (database, metrics).
