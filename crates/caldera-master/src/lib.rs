//! caldera-master
