//! The auth, product and cart services over real sockets: in-process servers on port 0 (and, in
//! `binaries`, the built binaries as child processes), with the real JWT check throughout.

mod auth;
mod binaries;
mod cart;
mod jwt;
mod product;
mod serving;
mod support;
