//! brood::cgi end to end: real scripts (sh, Python) under a temporary root, a real server
//! on loopback, requests through hyper's client or raw TCP. Every script writes its pid to
//! the test's pid directory, and every test ends by checking that none of them is alive.

mod support;

mod body;
mod faults;
mod headers;
mod limits;
mod meta;
mod paths;
mod raw;
mod safety;
