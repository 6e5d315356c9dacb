//! wick's typed configuration (TOML file + environment overrides, validated at start-up).
//! The schema lands with the configuration issue (#8); the engine and server take their
//! settings as plain structs until then.
