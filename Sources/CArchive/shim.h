#ifndef CONTINUON_CARCHIVE_SHIM_H
#define CONTINUON_CARCHIVE_SHIM_H

#include <archive.h>
#include <archive_entry.h>
#include <locale.h>

/* The AE_IF* file type macros are casts that Swift does not import. */
static const unsigned int CP_AE_IFREG = 0100000;
static const unsigned int CP_AE_IFMT = 0170000;

#endif
