//! `drover` subcommands, one module each.
