package kagi.conf;

interface Named {
    short id();
}
