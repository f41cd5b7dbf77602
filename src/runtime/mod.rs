//! Container runtime and local registry: image seeding into the registry's storage.
