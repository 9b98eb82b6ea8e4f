//! caldera-db
