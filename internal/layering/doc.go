// Package layering holds one test: that the import graph of klp-kvm is the
// one docs/architecture.md's package map describes, every package
// importing only the packages its row allows. It has no code.
package layering
