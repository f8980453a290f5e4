// SPDX-License-Identifier: GPL-2.0
/*
 * test_klp_state3.c - the next cumulative patch, with the same
 * console_loglevel fix as test_klp_state2.c (state 1, version 2): Linux's
 * lib/livepatch/test_klp_state3.c, which is test_klp_state2.c built as
 * another module. Here KBUILD_MODNAME (the patches' Makefile) makes it
 * test_klp_state3.
 */
#include "test_klp_state2.c"
