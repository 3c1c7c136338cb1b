package ackhandler

// QueueImmediateAck (korium-tun) has the next packet sent in the 1-RTT
// space carry an ACK of what was received, without waiting for
// max_ack_delay or for a second ack-eliciting packet. The connection asks
// for it when a packet carried nothing but a PING.
func (h *ReceivedPacketHandler) QueueImmediateAck() {
	h.appDataPackets.queueImmediateAck()
}

func (h *appDataReceivedPacketTracker) queueImmediateAck() {
	if h.ackElicitingPacketsReceivedSinceLastAck == 0 {
		return // nothing to acknowledge that an ACK would not already carry
	}
	h.ackQueued = true
	h.ackAlarm = 0
}
