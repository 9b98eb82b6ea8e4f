//! caldera-sandbox
