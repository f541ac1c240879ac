package kagi.conf;

class Oops extends Exception {
    short depth;
}
