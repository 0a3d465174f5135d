//go:build tools

// Package tools records the commands this module builds so that `go mod tidy` keeps them.
package tools

import (
	_ "github.com/Shopify/toxiproxy/v2/cmd/server"
)
