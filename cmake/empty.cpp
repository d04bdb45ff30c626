// Keeps a layer's static library non-empty while it has no sources of its own.
