//! A throwaway PostgreSQL server: the controller's test server (its store suite runs on it
//! too), for the end-to-end tests of `drover serve --database`.

pub use drover_controller::store::postgres::test_server::{TestServer, bin_dir};
