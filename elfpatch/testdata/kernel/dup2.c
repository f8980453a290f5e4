/* Third object: a third local of a name used elsewhere (sink_local). */
static unsigned long sink_local;
unsigned long dup2_touch(void) { return ++sink_local; }
