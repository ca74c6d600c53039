# lookout build.  `make` builds build/lookout; `make san` the ASan+UBSan build in build-san/;
# `make test` runs the whole suite (unit tests under the sanitizer build, then pytest).
# Sources are discovered: any src/**/*.c is part of the VMM, any tests/unit/test_*.c is a unit test
# binary, any tests/guests/*.S|*.c kernel is listed in tests/guests/Makefile.inc.

CC      ?= cc
PKGS    := libcjson libzydis libseccomp libzstd liblz4 slirp libsodium libxxhash
WARN    := -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wvla -Wformat=2
CFLAGS_COMMON := -std=gnu11 -g -D_GNU_SOURCE -Isrc $(WARN) -fno-strict-aliasing \
                 $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LIBS    := $(shell pkg-config --libs $(PKGS) 2>/dev/null || echo -lcjson -lZydis -lseccomp -lzstd -llz4 -lslirp -lsodium -lxxhash) -lpthread -lm

OPT_CFLAGS := -O2 -fstack-protector-strong -D_FORTIFY_SOURCE=2 -fPIE
SAN_CFLAGS := -O1 -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -fPIE
LDFLAGS_COMMON := -pie -Wl,-z,relro,-z,now,-z,noexecstack

SRCS      := $(shell find src -name '*.c' | sort)
LIB_SRCS  := $(filter-out src/cli/main.c,$(SRCS))
UNIT_SRCS := $(sort $(wildcard tests/unit/test_*.c))

define objs
$(patsubst src/%.c,$(1)/obj/%.o,$(2))
endef

all: build/lookout guests build/direct-costs

MAKEFLAGS += --no-print-directory

build/obj/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(OPT_CFLAGS) -MMD -MP -c $< -o $@
build-san/obj/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(SAN_CFLAGS) -MMD -MP -c $< -o $@

# Objects are linked directly, not through an archive: the software CPU registers its instruction
# handlers in a linker section, and an archive would drop objects nothing references by name.
LIB_OBJS     := $(call objs,build,$(LIB_SRCS))
LIB_OBJS_SAN := $(call objs,build-san,$(LIB_SRCS))

build/lookout: build/obj/cli/main.o $(LIB_OBJS)
	$(CC) $(OPT_CFLAGS) $(LDFLAGS_COMMON) -o $@ $^ $(LIBS)
build-san/lookout: build-san/obj/cli/main.o $(LIB_OBJS_SAN)
	$(CC) $(SAN_CFLAGS) $(LDFLAGS_COMMON) -o $@ $^ $(LIBS)

# A host measurement for docs/translator.md (not part of lookout): bench/direct_costs.c.
build/direct-costs: bench/direct_costs.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(OPT_CFLAGS) $(LDFLAGS_COMMON) -o $@ $< $(LIBS)

# Unit tests (cmocka), always built with the sanitizers.
build-san/tests/%: tests/unit/%.c $(LIB_OBJS_SAN)
	@mkdir -p $(dir $@) build-san/tests/.deps
	$(CC) $(CFLAGS_COMMON) $(SAN_CFLAGS) -Itests/unit -MMD -MP -MF build-san/tests/.deps/$*.d $(LDFLAGS_COMMON) -o $@ $< $(LIB_OBJS_SAN) $(LIBS) -lcmocka
UNIT_BINS := $(patsubst tests/unit/%.c,build-san/tests/%,$(UNIT_SRCS))

san: build-san/lookout
unit: $(UNIT_BINS)

include tests/guests/Makefile.inc
-include tests/difftest/Makefile.inc

test: all san unit
	tests/run.sh

# The README's two commands.  Both install what is missing first (scripts/setup.sh) and build in a
# second make, so pkg-config sees the libraries setup just installed.
#   make run    boots the default Debian guest to a shell on this terminal (ARGS="--smp 2" ...)
#   make check  the whole suite, as CI runs it (.ci/run)
run:
	bash scripts/setup.sh
	$(MAKE) -j2 build/lookout
	build/lookout run $(ARGS)

check:
	bash scripts/setup.sh
	$(MAKE) -j2 test

fmt:
	clang-format -i $(SRCS) $(shell find src tests -name '*.h') $(UNIT_SRCS) bench/*.c

clean:
	rm -rf build build-san

# `make fuzz [FUZZ_SECS=N] [FUZZ=harness...]`: every libFuzzer harness for N seconds each.
fuzz:
	tests/fuzz/run.sh $(or $(FUZZ_SECS),60) $(FUZZ)

.PHONY: all san unit test fmt clean guests run check fuzz
.SECONDARY:
-include $(shell find build build-san -name '*.d' 2>/dev/null)
