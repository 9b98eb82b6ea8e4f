//! caldera-core
