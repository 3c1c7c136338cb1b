// Package layering holds only a test: the import arrows between the rooms
// of the node (peers, datapath, nat, overlay) point down, as the packet
// path reads from the folder names: device -> datapath -> peers ->
// smartsock -> UDP.
package layering
